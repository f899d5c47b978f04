from hypermeta.cli import main

main()
