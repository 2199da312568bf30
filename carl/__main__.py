from carl.cli import main

main()
